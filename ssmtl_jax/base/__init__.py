"""Floor 0, the base every other floor stands on (DESIGN §1): errors, files,
flag parsing and one-line errors (cli), the record format (records, schema),
ground truth, a run's saved config, summary writers. Imports nothing else
from the project."""
