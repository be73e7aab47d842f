"""Meta-training on base classes: one episodic loop, one file per meta-trained method."""
