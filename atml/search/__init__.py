"""Search: samplers and pruners (:mod:`.strategy`), the coordinator (:mod:`.coordinator`), the worker (:mod:`.worker`)."""
