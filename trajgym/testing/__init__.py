"""Test helpers shipped with trajgym: a fake OpenAI-compatible server."""
