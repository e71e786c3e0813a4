"""The compute path: loader, paged KV cache, scheduler, sampler, runner and the LLM class."""
