"""Protocol frontends: each turns its protocol's request into a LoginRequest and back."""
