-- Rotate through the request paths listed one per line in the file named by WRK_PATHS.
local paths = {}
for line in io.lines(os.getenv("WRK_PATHS")) do
  paths[#paths + 1] = line
end
local index = 0
request = function()
  index = index % #paths + 1
  return wrk.format("GET", paths[index])
end
