//! Metrics registry: counters, gauges and time histograms per listener, cluster and backend.
