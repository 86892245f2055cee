"""FlowRL training (Lv et al., 2025, arXiv 2506.12811): flow policy, critics, losses and loop."""
