"""The live feed (contract 7): every timeline event, in an exact order, to whoever follows."""
