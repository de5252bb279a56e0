"""Ray resource pools, placement groups and worker groups."""
