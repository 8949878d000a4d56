"""HTTP routes, one module per API: conversations, chat (SSE), openai (/v1), ops (health, metrics, models)."""
