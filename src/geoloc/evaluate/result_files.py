"""Columns of the files `geoloc evaluate` writes, shared by the writer and its readers."""

# recalls/<test>.csv: one row per run x test set.
RECALL_COLUMNS = (
    "test_set", "n_queries", "n_database", "n_queries_without_positive", "r1", "r5", "r10", "r20",
    "descriptor_seconds", "search_seconds", "latency_ms_per_image", "test_dir",
    "model_sha256", "k", "positive_dist_threshold", "resize", "autocast", "device", "kind",
)
# recalls/<test>.queries.csv: one row per query.
QUERY_COLUMNS = ("query", "first_correct_rank", "has_positive", "predictions", "distances_m")
