"""What is read after a run: MLMD artifacts and timings, TFMA results, summary.json, mask images, the dashboard."""
