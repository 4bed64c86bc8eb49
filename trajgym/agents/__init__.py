"""Agents: the scripted expert, floor baselines, and (later) LLM teachers and students."""
