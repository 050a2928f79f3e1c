"""Training: the RLOO LightningModule, its callbacks (EMA anchor, merge), the I x M loop, checkpoints, strategies, the SFT stage."""
