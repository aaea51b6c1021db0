"""Discord and Telegram front ends; they enqueue jobs and reply, and never import torch."""
