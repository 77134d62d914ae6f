"""taskerd.engine: the asyncio scheduling core."""
