"""Scores: confusion counts (pixel error, Dice, IoU), region scores (Rand error, V_info), the score board,
tables, and the one list of score names."""
