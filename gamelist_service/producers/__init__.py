"""Lists pushed from outside: GameListUpdater (the prototype's API) and its menu, validation of games."""
