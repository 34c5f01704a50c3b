"""The training run itself: TRL's SFTTrainer on a plan, peak-memory measurement, artifacts, failure reasons.

May import every other engine part; never jobs/ or ui/.
"""
