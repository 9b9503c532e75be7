"""One suite YAML: layer-swap variants and baseline merges, merged, MGSM-scored and ranked."""
