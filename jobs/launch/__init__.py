"""How a claimed job starts: a local worker process (the default, in `jobs.dispatcher`),
`accelerate launch` for several training processes on one machine (`accelerate`, `rank`),
or Ray Jobs on a cluster (`ray`). Whatever starts it, the job reports through the store:
rows are the contract, never a launcher's memory.
"""
