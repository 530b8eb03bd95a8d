"""Columns of the files `geoloc evaluate` writes, shared by the writer and its readers.

`geoloc evaluate` writes, for every test set NAME, `NAME.csv` and `NAME.queries.csv` in its
`--out-dir`: all of them appear together, or none does.

`NAME.csv` (RECALL_COLUMNS) has one header and one data row:
  test_set                    NAME
  n_queries, n_database       images in queries/ and database/
  n_queries_without_positive  queries with no database image within the threshold (they count
                              as misses: every query stays in the denominator)
  r1, r5, r10, r20            recall@N in percent
  descriptor_seconds          wall time of the database and query descriptors, decoding included
                              (a database shared with another test set is embedded once; both
                              report the time it took)
  search_seconds              wall time of the k-NN search
  latency_ms_per_image        descriptor_seconds / images, in ms (a batched throughput figure)
  test_dir                    the test set folder as given
  model_sha256                sha256 of the model.pt evaluated; "" for an untrained baseline
  k                           neighbours retrieved per query
  positive_dist_threshold     metres (UTM) within which a database image is correct
  resize                      "" (each image at its own resolution) or "HxW" (--resize H W)
  autocast                    "0" (fp32 descriptors) or "1" (the forward pass under autocast)
  device                      the device as `geoloc train` records it in train.json
  kind                        "trained" or "baseline"

`NAME.queries.csv` (QUERY_COLUMNS) has one row per query, in the order of the listing:
  query                relative path of the query image within the test set folder
  first_correct_rank   1..k, or 0 when no prediction within the top k is correct
  has_positive         1 when a database image lies within the threshold, else 0
  predictions          JSON array of the k predicted database images (relative paths within
                       the test set folder), nearest first
  distances_m          JSON array of the k UTM distances in metres between the query and each
                       prediction, rounded to 0.1 m
The JSON arrays sit in quoted CSV cells, so no character a file name may hold (comma, quote,
'|', newline, any Unicode) can break the file: read a cell with `json.loads`.
"""

# recalls/<test>.csv: one row per run x test set.
RECALL_COLUMNS = (
    "test_set",
    "n_queries",
    "n_database",
    "n_queries_without_positive",
    "r1",
    "r5",
    "r10",
    "r20",
    "descriptor_seconds",
    "search_seconds",
    "latency_ms_per_image",
    "test_dir",
    "model_sha256",
    "k",
    "positive_dist_threshold",
    "resize",
    "autocast",
    "device",
    "kind",
)
# recalls/<test>.queries.csv: one row per query.
QUERY_COLUMNS = ("query", "first_correct_rank", "has_positive", "predictions", "distances_m")
