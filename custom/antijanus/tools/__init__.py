"""Research tools: view-consistency metrics of a run, the 2D view experiment, ablation sweeps."""
