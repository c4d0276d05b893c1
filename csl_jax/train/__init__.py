"""Training: state, pure steps, optimisers, sharding, checkpoints, the workdir lock and the loop."""
