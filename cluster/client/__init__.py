"""The client layer: `RewardClient` (HTTP or a Serve handle) and the reward functions RL frameworks
load from a file (verl_reward.py, openrlhf_reward_func.py). Nothing here imports torch or pyarrow."""
