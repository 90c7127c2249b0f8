"""HESC extensions of the TRM (see docs/hesc.md): capsules, 3-action DQN Q-head, VQ concepts,
latent planning, memory bank, multi-token prediction."""
