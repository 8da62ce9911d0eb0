"""Model config, GPU datasheet and vLLM server config: loaders and derived quantities."""
