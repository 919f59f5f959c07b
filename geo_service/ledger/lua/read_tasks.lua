-- The counters of the task hashes named in KEYS (task_rows.lua): the collector's reads take a page of tasks in
-- one call per bucket instead of one command per task, and Redis picks the fields out faster than the reader would.
return task_rows(KEYS)
