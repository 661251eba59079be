"""Browser-facing and operational HTTP surfaces, one blueprint each."""
