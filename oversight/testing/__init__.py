"""Test and benchmark helpers (a fault-injecting fake OpenAI/Anthropic server)."""
