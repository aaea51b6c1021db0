"""RQ workers: answer jobs (model preloaded, batched) and fine-tuning jobs. Built on `engine`."""
