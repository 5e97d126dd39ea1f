"""How tarea talks to task containers: JSON-RPC over stdio, or the seed's HTTP."""
