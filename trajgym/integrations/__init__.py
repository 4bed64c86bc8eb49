"""trajgym from the ecosystem's tools: TRL's GRPOTrainer, OpenEnv servers and MCP.

Each module imports its package (``trl``, ``openenv``, ``mcp``) itself, so that trajgym runs
without them; the extras install them (``pip install 'trajgym[trl,openenv,mcp]'``).
"""
