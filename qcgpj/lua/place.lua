-- The InputQueue's deep placement pass. ARGV: now, entries to scan, tasks to place at most.
NOW = ARGV[1]
return place(tonumber(ARGV[2]), tonumber(ARGV[3]))
