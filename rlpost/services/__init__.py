"""Services users start next to training: the Sandbox-Fusion-compatible code runner."""
