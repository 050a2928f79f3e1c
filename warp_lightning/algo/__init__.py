"""The arithmetic of WARP as pure functions over tensors and state dicts: RLOO, KL, EMA, SLERP, LITI, WarpState."""
