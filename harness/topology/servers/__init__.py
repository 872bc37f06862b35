"""Small servers and clients that run inside pod namespaces (echo HTTP server, probes)."""
