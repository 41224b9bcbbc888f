"""The library behind the function app: resolve a Teams user's ChannelAccount on demand and send."""
