"""The training run itself: TRL's SFTTrainer on a plan (its PEFT/TRL keywords in `config`, shared with the exported
script in `script`), typed progress events, peak-memory measurement, artifacts, failure reasons.

May import every other engine part; never jobs/ or ui/.
"""
