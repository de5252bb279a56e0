"""What both ends of an HTTP API rlpost speaks need, in a package below both, so neither end imports the other:
SGLang's error bodies, tensor wire format and weight-update process group (the rollout's client and embedded server,
and the resharder's weight pushes); Sandbox Fusion's languages (the sandbox tool and `rlpost serve sandbox`)."""
