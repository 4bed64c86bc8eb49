"""trajgym: agentic trajectory synthesis and student training in verified tool environments."""

from trajgym import envs as envs  # registers the environments with gymnasium

__version__ = "0.1.0"
