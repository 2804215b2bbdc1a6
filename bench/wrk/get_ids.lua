-- GET /jobs/{id} for ids drawn at random from the file named by the first script
-- argument (one id a line), so reads spread over the whole table, not one cached row.

local ids = {}

function init(args)
  for line in io.lines(args[1]) do
    ids[#ids + 1] = line
  end
  math.randomseed(os.time() + #ids)
end

function request()
  return wrk.format("GET", "/jobs/" .. ids[math.random(#ids)])
end
