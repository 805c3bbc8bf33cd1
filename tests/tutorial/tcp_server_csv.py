# From the tutorial Tether grew out of (the project's shared seed), verbatim: the test
# suite runs it unchanged against `tether send --raw`.
import socket #loads the socket library
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(('127.0.0.1', 5003))
s.listen(1)
connection, address = s.accept()
connection.send(b"Connection established")
file = open("some_file.csv", "a+") #Opens a file and if it doesn't exist creates it, in append mode
while True:
    received_data = connection.recv(32)
    print(received_data)
    if not received_data:
        break;
    #Converts the bytes data to a string, removes the "b" and "'", adds a newline character and stores the result 
    #at the end of the file
    file.write(str(received_data).lstrip('b').strip("'")+'\n') 
    connection.send(b"data processed")
file.close() #Closes the file
connection.close()
s.close()
