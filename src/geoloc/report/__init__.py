"""Stage 5, report: the recalls table (`geoloc aggregate`), the study as variants x test sets,
conclusions with bootstrap intervals, plots, galleries, the published comparison, and the
rendered HTML page (`geoloc report`).

May import `evaluate.result_files` (the columns it reads), `model.backbones` (display names)
and the shared plumbing; nothing from `train`.
"""
