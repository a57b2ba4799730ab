"""Reports: drawn detections, tables and plots for experiments."""
