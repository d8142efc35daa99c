"""The local stack: every part of the credits engine on one machine (`creditctl up`, `creditctl demo`)
and the seed scenario it plays."""
