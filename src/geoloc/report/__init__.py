"""Stage 5, report: the recalls table (`geoloc aggregate`), the study as variants x test sets,
the check of every result against the config, conclusions with bootstrap intervals corrected
for multiple comparisons, plots, galleries, the published comparison, and the rendered HTML
page (`geoloc report`).

May import `evaluate.result_files` (the columns it reads), `model.backbones` (display names),
`geoloc.grid` (the config's runs, to check results against) and the shared plumbing; nothing
from `train`.
"""
