"""Cluster rehearsal without a cluster: the chart's pods run as containers of the shoal image on Docker."""
