"""The protocol author's API: @protocol, Episode and Agent, decisions, schedules, quotes, prompts, plugins."""
