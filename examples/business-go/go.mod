module example.com/relay-business

go 1.19
