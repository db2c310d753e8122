"""`kubetune demo`: the whole job (fine-tune, version, serve) on one machine, through the operator."""
