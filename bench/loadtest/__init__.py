"""Issue 9, item 6: the load test (`make loadtest`); bench.loadtest.run says what it does."""
