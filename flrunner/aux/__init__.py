"""Aux: the requests between a job's engine and its sites, as both sides make and serve them.

- `payload`: a Shareable as message frames (large binary values as raw frames).
- `handling`: serving a request (its topic's handler) and mapping every outcome to a reply Shareable.
- `secure`: sealing a request and its reply end to end (`flrunner.security.sealed` is the crypto).
"""
