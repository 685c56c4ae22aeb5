"""Meridian's placement policy, pure: demand, held nodes, the catalog and recent events
in; what to buy, what to release and what could not be placed out. It imports the
package's vocabulary and `meridian_core` only."""
